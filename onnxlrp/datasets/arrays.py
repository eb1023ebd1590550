"""Reading .npy / .npz files as a data set: memory-mapped where the format allows, sliced batch by batch."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InputError
from .batch import NO_LABEL, InputSpec, RawBatch


def _load_member(path: Path, key: str) -> np.ndarray:
    """One array of an .npz: memory-mapped when stored uncompressed (np.savez), read whole when compressed."""
    with zipfile.ZipFile(path) as archive:
        name = key + ".npy"
        info = archive.getinfo(name)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                header = raw.read(30)
                start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(
                    header[28:30], "little")
                raw.seek(start)
                version = np.lib.format.read_magic(raw)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(raw)
                offset = raw.tell()
            if not dtype.hasobject:
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                 order="F" if fortran else "C")
        with archive.open(name) as member:
            return np.lib.format.read_array(member, allow_pickle=False)


def _npz_keys(path: Path) -> list:
    """Array names in an .npz."""
    with zipfile.ZipFile(path) as archive:
        return [n[:-4] for n in archive.namelist() if n.endswith(".npy")]


class ArraySource:
    """Samples along axis 0 of arrays in an .npy or .npz file (labels from another array of the .npz)."""

    kind = "numpy"

    def __init__(self, path: Union[str, Path], specs: Sequence[InputSpec], key: Union[None, str, Mapping] = None,
                 label_key: Optional[str] = None) -> None:
        self.path = Path(path)
        self.specs = list(specs)
        suffix = self.path.suffix.lower()
        if suffix == ".npy":
            if len(self.specs) != 1:
                raise InputError(f"{self.path} holds one array; the model has {len(self.specs)} inputs: use an .npz "
                                 f"with one array per input")
            if key or label_key:
                raise InputError(f"--key and --label-column name arrays of an .npz; {self.path} is an .npy")
            self.keys = {self.specs[0].name: None}
            self.label_key = None
        else:
            self.keys, self.label_key = self._npz_choice(key, label_key)
        self._arrays: Optional[dict] = None
        arrays = self._open()
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise InputError(f"{self.path}: the arrays have different lengths ({sorted(lengths)})")
        self.length = lengths.pop()
        self._check_shapes(arrays)
        self.has_labels = self.label_key is not None
        self.classes = None

    def _npz_choice(self, key, label_key) -> tuple:
        """Which array feeds which input, and which holds the labels."""
        try:
            available = _npz_keys(self.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from None
        names = [s.name for s in self.specs]
        if isinstance(key, Mapping):
            keys = dict(key)
        elif key:
            if len(names) != 1:
                raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}): give --key NAME=ARRAY "
                                 f"for each")
            keys = {names[0]: key}
        elif set(names) <= set(available):
            keys = {n: n for n in names}
        elif len(names) == 1 and len([k for k in available if k != label_key]) == 1:
            keys = {names[0]: next(k for k in available if k != label_key)}
        else:
            raise InputError(f"{self.path} holds {', '.join(available) or 'no arrays'}: choose the samples with --key "
                             f"(the model's input: {', '.join(names)})")
        for wanted in [*keys.values(), *([label_key] if label_key else [])]:
            if wanted not in available:
                raise InputError(f"{self.path} has no array {wanted!r} (it holds: {', '.join(available)})")
        unknown = sorted(set(keys) - set(names))
        if unknown:
            raise InputError(f"the model has no input {unknown[0]!r} (inputs: {', '.join(names)})")
        return keys, label_key

    def _open(self) -> dict:
        """The arrays, opened once per process (memory-mapped where possible)."""
        if self._arrays is None:
            try:
                if self.path.suffix.lower() == ".npy":
                    self._arrays = {self.specs[0].name: np.load(self.path, mmap_mode="r", allow_pickle=False)}
                else:
                    arrays = {name: _load_member(self.path, key) for name, key in self.keys.items()}
                    if self.label_key:
                        arrays[None] = _load_member(self.path, self.label_key)
                    self._arrays = arrays
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise InputError(f"cannot read {self.path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        return self._arrays

    def _check_shapes(self, arrays: dict) -> None:
        """Every sample of an array has the same shape: a mismatch with the model is the whole file's, one error."""
        for spec in self.specs:
            got = arrays[spec.name].shape[1:]
            ok = len(got) == len(spec.shape) and all(w is None or g == w for g, w in zip(got, spec.shape))
            if not ok:
                want = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
                raise InputError(f"{self.path}: samples of shape {tuple(got)}, the model's input {spec.name!r} needs "
                                 f"{want} per sample")
            if arrays[spec.name].dtype.hasobject:
                raise InputError(f"{self.path}: array for {spec.name!r} holds Python objects, not numbers")
        labels = arrays.get(None)
        if labels is not None and (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)):
            raise InputError(f"{self.path}: labels {self.label_key!r} must be one integer per sample, got "
                             f"{labels.dtype} {labels.shape}")

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None   # reopened (memory-mapped) by each Ray worker
        return state

    def describe(self) -> dict:
        """The data entry of the manifest."""
        return {"kind": self.kind, "path": str(self.path), "samples": self.length,
                "keys": {k: v for k, v in self.keys.items()}, "labels": self.label_key}

    def batches(self, start: int, stop: int, size: int) -> Iterator[RawBatch]:
        """Consecutive slices [start, stop) of at most size samples."""
        arrays = self._open()
        for first in range(start, stop, size):
            last = min(first + size, stop)
            index = np.arange(first, last, dtype=np.int64)
            labels = (np.asarray(arrays[None][first:last], dtype=np.int64) if None in arrays
                      else np.full(last - first, NO_LABEL, dtype=np.int64))
            values = {spec.name: np.asarray(arrays[spec.name][first:last]) for spec in self.specs}
            yield RawBatch(index=index, ids=[str(i) for i in range(first, last)], labels=labels, values=values)
