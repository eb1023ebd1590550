"""explain_dataset: open the data, compile once, plan shards, run an engine, keep the manifest and the summary."""
from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from ..errors import OnnxLrpError
from .manifest import (FAILED, FORMAT, MANIFEST, file_sha256, identity_difference, keep_failures_of, load_manifest,
                       save_manifest, shard_plan)

ENGINES = ("local", "ray")
SHARD_BYTES = 256 * 2 ** 20   # aim for shards of about this size
MAX_SHARD_ROWS = 16384


@dataclass
class DatasetRun:
    """What a run did: the folder, samples explained and failed (this run), shards done before, time taken."""

    folder: Path
    samples: int
    explained: int
    failed: int
    shards: int
    skipped_shards: int
    seconds: float
    engine: str
    details: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the end of a run."""
        rate = (self.explained + self.failed) / self.seconds if self.seconds > 0 else 0.0
        skipped = f", {self.skipped_shards} finished shard(s) skipped" if self.skipped_shards else ""
        failed = f" ({self.failed} failed, listed in {self.folder / FAILED})" if self.failed else ""
        return (f"explained {self.explained} sample(s){failed} of {self.samples} in {self.seconds:.1f} s "
                f"({rate:,.0f} samples/s, {self.engine} engine{skipped}) -> {self.folder}")


def _parse_target(target, has_labels: bool) -> Union[str, int]:
    """'argmax', 'label' or a class index."""
    if target is None or target == "argmax":
        return "argmax"
    if target == "label":
        if not has_labels:
            raise OnnxLrpError("--target label needs labels: a class-per-subfolder image folder, --label-column for "
                               "Parquet or an .npz array")
        return "label"
    try:
        value = int(target)
    except (TypeError, ValueError):
        raise OnnxLrpError(f"target must be a class index, 'label' or 'argmax', got {target!r}") from None
    if value < 0 or isinstance(target, bool) or (isinstance(target, float) and target != value):
        raise OnnxLrpError(f"target must be a class index >= 0, 'label' or 'argmax', got {target!r}")
    return value


def _model_digest(model) -> str:
    """SHA-256 of the model file (or of a ModelProto's bytes)."""
    if isinstance(model, (str, os.PathLike)) and Path(model).is_file():
        return file_sha256(Path(model))
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def default_shard_size(layout, specs, batch_size: int, samples: int, workers: int, engine: str) -> int:
    """About SHARD_BYTES of rows (at most MAX_SHARD_ROWS), at least 4 shards per Ray worker, a multiple of the
    batch size so that batches fall on the same samples whatever the shard size."""
    per_value = {"full": 4, "float16": 2, "sum": 0}[layout.store]
    row = 128 + 8 * len(layout.bias) + sum(per_value * (s.size or 50_000) + 8 for s in specs)
    size = max(1, min(SHARD_BYTES // row, MAX_SHARD_ROWS))
    if engine == "ray":
        size = min(size, math.ceil(samples / (4 * workers)))
    return max(batch_size, math.ceil(size / batch_size) * batch_size)


def _prepare_folder(folder: Path, resume: bool) -> Optional[dict]:
    """Create OUT/ or check it; with resume, the manifest of the run to continue (None: start afresh)."""
    if folder.exists() and not folder.is_dir():
        raise OnnxLrpError(f"output {folder} is a file: give a folder")
    manifest = load_manifest(folder) if folder.is_dir() else None
    if manifest is not None and not resume:
        done = len(manifest.get("shards", []))
        raise OnnxLrpError(f"{folder} holds a run already ({done} of {manifest.get('planned_shards')} shards done): "
                           f"pass --resume to continue it, or choose another folder")
    if manifest is None and folder.is_dir() and any(folder.iterdir()):
        raise OnnxLrpError(f"{folder} exists and is not empty (and holds no {MANIFEST}): choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    return manifest


def run_dataset(model, data, out, *, composite: Optional[str] = None, params: Optional[dict] = None,
                output: Optional[str] = None, init: Optional[str] = None, target="argmax", batch_size: int = 64,
                workers: int = 1, threads: Optional[int] = None, engine: str = "local",
                ray_address: Optional[str] = None, resume: bool = False, store: str = "full",
                key: Union[None, str, Mapping] = None, column: Union[None, str, Mapping] = None,
                label_column: Optional[str] = None, size=None, mean=None, std=None,
                shard_size: Optional[int] = None, gpus_per_worker: Optional[float] = None,
                providers: Optional[Sequence[str]] = None, progress: Optional[bool] = None,
                stall_seconds: Optional[float] = None) -> DatasetRun:
    """Explain every sample of data with model into Parquet shards under out; returns what the run did.

    model, composite, params, output, init, providers: as for Explainer (a compiled model keeps its composite).

    data: a folder of images (recursively; a class-per-subfolder layout gives labels), an .npy/.npz (key: the
    array, label_column: the .npz array of labels) or Parquet, a file or a folder (column: the list or
    image-bytes column, label_column: integer labels). target: a class index, "label" or "argmax". batch_size:
    samples per onnxruntime run; workers: concurrent runs on one session (local) or Ray actors (ray); threads:
    onnxruntime threads per worker (default: cores / workers locally, 1 on Ray). engine: "local" or "ray"
    (ray_address: a running cluster, else a local Ray is started; gpus_per_worker: default 1 when the cluster
    has GPUs). resume: continue the run in out, skipping its finished shards. store: "full" (float32 relevance
    list), "float16" or "sum". size / mean / std: image preprocessing (as `explain --input IMAGE`). shard_size:
    samples per Parquet file (default about 256 MB, a multiple of batch_size). progress: None draws a bar when
    stderr is a terminal. stall_seconds: the Ray engine gives up when its workers send nothing for this long."""
    from .. import __version__
    from ..runtime import Explainer
    from .output import OutputFolder
    from .progress import RunProgress
    from .rows import row_layout
    from .sources import input_specs, open_source
    from .writer import remove_leftovers
    if engine not in ENGINES:
        raise OnnxLrpError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for name, value in (("batch size", batch_size), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OnnxLrpError(f"{name} must be a positive integer, got {value!r}")
    if shard_size is not None and (not isinstance(shard_size, int) or shard_size < 1):
        raise OnnxLrpError(f"shard size must be a positive integer, got {shard_size!r}")
    if engine == "ray":
        from .ray_engine import check_reachable, require_ray
        require_ray()
        check_reachable(ray_address)   # before OUT/ is touched
        threads = threads or 1
    elif threads is None and workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    folder = Path(out)
    previous = _prepare_folder(folder, resume)

    started = time.perf_counter()
    # with Ray, the driver's explainer only describes the model (inputs, outputs): one CPU thread will do
    explainer = Explainer(model, composite, params=params, output=output, init=init,
                          providers=["CPUExecutionProvider"] if engine == "ray" else providers,
                          threads=1 if engine == "ray" else threads)
    specs = input_specs(explainer)
    source = open_source(data, specs, key=key, column=column, label_column=label_column, size=size, mean=mean,
                         std=std)
    target = _parse_target(target, source.has_labels)
    classes = explainer._classes()
    if isinstance(target, int) and classes is not None and target >= classes:
        raise OnnxLrpError(f"target {target} is out of range: output {explainer.meta['output']!r} has {classes} "
                           f"classes")
    layout = row_layout(explainer, specs, store)
    if shard_size is None and previous is not None:
        shard_size = previous["settings"]["shard_size"]
    shard_size = shard_size or default_shard_size(layout, specs, batch_size, len(source), workers, engine)
    shard_size = math.ceil(shard_size / batch_size) * batch_size
    meta = explainer.meta
    settings = {"model_sha256": _model_digest(model), "composite": meta["composite"], "params": meta["params"],
                "output": meta["output"], "init": meta["init"], "data": _resolved(source.describe()),
                "target": target, "batch_size": batch_size, "shard_size": shard_size, "store": store}
    if previous is not None:
        difference = identity_difference(previous["settings"], settings)
        if difference:
            raise OnnxLrpError(f"cannot resume the run in {folder}, a setting differs: {difference}")
        manifest = previous
    else:
        manifest = {"format": FORMAT, "onnxlrp_version": __version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
                    "model": {"path": str(model) if not hasattr(model, "graph") else None,
                              "inputs": [{"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)}
                                         for s in specs],
                              "explained_output": meta["output"]},
                    "classes": source.classes, "columns": layout.manifest(), "samples": len(source),
                    "planned_shards": 0, "shards": [], "complete": False, "runs": []}
    plan = shard_plan(len(source), shard_size)
    manifest["planned_shards"] = len(plan)
    finished = {s["shard"] for s in manifest["shards"]}
    remove_leftovers(folder, keep={s["file"] for s in manifest["shards"]})
    keep_failures_of(folder, finished)
    pending = [p for p in plan if p[0] not in finished]
    manifest["complete"] = not pending
    save_manifest(folder, manifest)

    total_pending = sum(stop - first for _, first, stop in pending)
    done_before = len(source) - total_pending
    details: dict = {}
    with RunProgress(len(source), done_before, progress) as bar:
        sink = OutputFolder(folder, manifest, layout.schema(), {k: (a, b) for k, a, b in plan}, bar,
                            give_up_after=min(max(batch_size, 64), max(total_pending, 1)))
        try:
            if pending and engine == "local":
                from .local_engine import run_local
                run_local(explainer, source, specs, layout, pending, batch_size, target, workers, sink)
            elif pending:
                from .ray_engine import STALL_SECONDS, run_ray
                model_bytes = explainer.model.SerializeToString()
                del explainer
                details = run_ray(model_bytes, specs, source, layout, pending, batch_size, target, workers, threads,
                                  sink, address=ray_address, gpus_per_worker=gpus_per_worker,
                                  stall_seconds=stall_seconds or STALL_SECONDS)
        except BaseException:
            sink.abort()
            raise
    seconds = time.perf_counter() - started
    run = DatasetRun(folder=folder, samples=len(source), explained=bar.ok, failed=bar.failed, shards=len(plan),
                     skipped_shards=len(plan) - len(pending), seconds=seconds, engine=engine, details=details)
    manifest["runs"].append({"engine": engine, "workers": workers, "threads": threads, "explained": run.explained,
                             "failed": run.failed, "seconds": round(seconds, 3), **details})
    save_manifest(folder, manifest)
    return run


def _resolved(description: dict) -> dict:
    """The data description with its path made absolute (a resumed run may start from another folder)."""
    return {**description, "path": str(Path(description["path"]).resolve())}


def explain_dataset(model, data, out, **options) -> Path:
    """Explain every sample of data (image folder, .npy/.npz, Parquet) with model into Parquet shards under out,
    one row per sample, with _manifest.json and _failed.jsonl; returns the folder. The options are run_dataset's
    (composite, params, output, init, target, batch_size, workers, threads, engine, ray_address, resume, store,
    key, column, label_column, size, mean, std, shard_size, gpus_per_worker, providers, progress)."""
    return run_dataset(model, data, out, **options).folder


explain_dataset.__signature__ = inspect.signature(run_dataset).replace(return_annotation=Path)
