"""Reading user data files (.npy, .npz) into the arrays a model's inputs expect."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError


def load_inputs(path: str, input_names: Sequence[str]) -> dict:
    """Load .npy (one input) or .npz (arrays by input name; a single array fits a single-input model)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"input file not found: {file}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            data = {"": np.load(file, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                data = {k: archive[k] for k in archive.files}
        else:
            raise InputError(f"input file {file} must be .npy or .npz, got {suffix or 'no suffix'!r}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input file {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if set(input_names) <= set(data):
        return {name: data[name] for name in input_names}
    if len(input_names) == 1 and len(data) == 1:
        return {input_names[0]: next(iter(data.values()))}
    raise InputError(f"input file {file} holds {', '.join(repr(k) for k in data if k) or 'one unnamed array'}; "
                     f"the model needs {', '.join(map(repr, input_names))} (save them by name in an .npz)")
