"""Which reader a DATA path needs: an .npy/.npz file, Parquet (a file or a folder), or a folder of images."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InputError
from ..inputs import IMAGE_SUFFIXES, ImageOptions, parse_floats, parse_size
from .batch import InputSpec

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
           "tensor(bfloat16)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
           "tensor(int16)": np.int16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def input_specs(explainer) -> list:
    """The explainer's inputs as InputSpecs (per-sample shape: the declared shape without the batch axis)."""
    specs = []
    for arg in explainer.inputs:
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or [None])[1:])
        specs.append(InputSpec(arg.name, np.dtype(_DTYPES.get(arg.type, np.float32)), shape))
    return specs


def _tuple(value, parse) -> Optional[tuple]:
    """A size/mean/std given as text (CLI), a number or a sequence (Python)."""
    if value is None or isinstance(value, str):
        return parse(value)
    if isinstance(value, (int, float)):
        return (value,)
    return tuple(value)


def image_options_for(spec: InputSpec, size=None, mean=None, std=None) -> ImageOptions:
    """How images become this input (layout and static size from the model, the rest from the user)."""
    from ..inputs import options_for_shape
    size = _tuple(size, parse_size)
    if size is not None and len(size) == 1:
        size = size * 2
    return options_for_shape([None, *spec.shape], size, _tuple(mean, lambda t: parse_floats(t, "--mean")),
                             _tuple(std, lambda t: parse_floats(t, "--std")))


def open_source(data: Union[str, Path], specs: Sequence[InputSpec], *, key: Union[None, str, Mapping] = None,
                column: Union[None, str, Mapping] = None, label_column: Optional[str] = None, size=None, mean=None,
                std=None):
    """The reader for data: ArraySource, ParquetSource or ImageFolderSource (one clear error when none fits)."""
    from .arrays import ArraySource
    from .images import ImageFolderSource
    from .parquet_source import ParquetSource, parquet_files
    path = Path(data)
    if not path.exists():
        raise InputError(f"data not found: {path}")
    options = image_options_for(specs[0], size, mean, std) if len(specs) == 1 else None
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in (".npy", ".npz"):
            if column:
                raise InputError("--column names a Parquet column; for .npz files use --key")
            return ArraySource(path, specs, key=key, label_key=label_column)
        if suffix == ".parquet":
            return ParquetSource(path, specs, column=column, label_column=label_column, options=options)
        if suffix in IMAGE_SUFFIXES:
            raise InputError(f"{path} is one image: explain it with `onnxlrp explain MODEL --input {path}`, or give "
                             f"the folder that holds the images")
        raise InputError(f"data {path} must be an .npy/.npz file, a Parquet file or a folder (of Parquet files or "
                         f"images), got {suffix or 'a file without suffix'!r}")
    if parquet_files(path):
        if key:
            raise InputError("--key names an array of an .npz; for Parquet use --column")
        return ParquetSource(path, specs, column=column, label_column=label_column, options=options)
    if key or column or label_column:
        raise InputError(f"{path} is a folder of images: --key, --column and --label-column do not apply "
                         f"(labels come from the subfolder names)")
    if options is None:
        raise InputError(f"a folder of images fits a single-input model; this one has {len(specs)} inputs")
    return ImageFolderSource(path, specs, options)
