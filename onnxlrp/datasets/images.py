"""Reading a folder of images as a data set: recursive listing, class-per-subfolder labels, decoding per sample."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from ..errors import InputError
from ..inputs import IMAGE_SUFFIXES, ImageOptions, load_image
from .batch import NO_LABEL, InputSpec, RawBatch


def list_images(root: Path) -> list:
    """Image files under root (recursively, hidden entries skipped), as sorted relative POSIX paths."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((Path(folder) / name).relative_to(root).as_posix())
    return sorted(found)


def class_labels(paths: Sequence[str]) -> tuple:
    """(labels, class names) when every image lies in a subfolder (the class), else (None, None)."""
    tops = [p.split("/", 1)[0] if "/" in p else None for p in paths]
    if not paths or any(t is None for t in tops):
        return None, None
    classes = sorted(set(tops))
    number = {c: i for i, c in enumerate(classes)}
    return np.array([number[t] for t in tops], dtype=np.int64), classes


def decode_image(data: Union[str, Path, bytes], options: ImageOptions) -> Union[np.ndarray, str]:
    """One image (a path or encoded bytes) as the model's per-sample array, or the reason it cannot be read."""
    encoded = isinstance(data, (bytes, bytearray))
    try:
        return load_image(io.BytesIO(data) if encoded else data, options)[0]
    except InputError as exc:
        reason = str(exc)
    except Exception as exc:  # a decoder failing in its own way on a broken file
        reason = f"cannot decode image: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if encoded:  # PIL names the in-memory file by its repr: say what it was instead
        reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>:?", "", reason)
        reason = reason.replace("cannot read image", f"cannot read image bytes ({len(data)} bytes):", 1)
    return reason


class ImageFolderSource:
    """Every image under a folder; a class-per-subfolder layout gives labels (classes in sorted order)."""

    kind = "images"

    def __init__(self, root: Union[str, Path], specs: Sequence[InputSpec], options: ImageOptions) -> None:
        self.root = Path(root)
        if len(specs) != 1:
            raise InputError(f"a folder of images fits a single-input model; this one has {len(specs)} inputs")
        self.spec = specs[0]
        self.options = options
        self.paths = list_images(self.root)
        if not self.paths:
            raise InputError(f"{self.root} holds no Parquet files and no images ({', '.join(IMAGE_SUFFIXES)})")
        self.labels, self.classes = class_labels(self.paths)
        self.has_labels = self.labels is not None

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict:
        """The data entry of the manifest."""
        return {"kind": self.kind, "path": str(self.root), "samples": len(self.paths), "classes": self.classes,
                "image": {"size": self.options.size, "mean": self.options.mean, "std": self.options.std,
                          "channels": self.options.channels, "channels_last": self.options.channels_last}}

    def batches(self, start: int, stop: int, size: int) -> Iterator[RawBatch]:
        """Decoded images [start, stop), size at a time; an unreadable file becomes its reason."""
        for first in range(start, stop, size):
            last = min(first + size, stop)
            names = self.paths[first:last]
            labels = (self.labels[first:last] if self.labels is not None
                      else np.full(last - first, NO_LABEL, dtype=np.int64))
            values = [decode_image(self.root / name, self.options) for name in names]
            yield RawBatch(index=np.arange(first, last, dtype=np.int64), ids=list(names), labels=labels,
                           values={self.spec.name: values})
